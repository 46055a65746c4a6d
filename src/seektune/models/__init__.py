"""seektune.models"""
