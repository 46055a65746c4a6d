"""seektune.export"""
