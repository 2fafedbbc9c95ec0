"""`fsan ablate`: the paper's Table 4 variants trained and scored, and their table."""
