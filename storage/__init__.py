"""The feature database and the file layout under $ATLAS_HOME.

This package owns every SQL statement that defines a table (`schema`), the connection policy (`db`), where
files live (`layout`), and one read/write module per stage. Nothing else in the project writes DDL.
"""
