"""`make bench`: each module here measures one stage and prints ratios measured in the same run."""
