"""seektune.utils"""
