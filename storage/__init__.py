"""The feature database and the file layout under $ATLAS_HOME.

This package owns every SQL statement that defines a table (`schema`), the connection policy (`db`: one writer
on a working copy, readers on published `snapshots`), where files live (`layout`), which files the tables own
(`artifacts`: claims and the sweep), and one read/write module per stage. Nothing else in the project writes DDL.
"""
