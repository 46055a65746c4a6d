"""seektune.serve"""
