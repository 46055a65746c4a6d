"""seektune.eval"""
