"""seektune.train"""
