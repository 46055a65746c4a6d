"""seektune.data"""
