"""`fsan train`: the loop, one step and its faster forms, run folders and their lock, resume, DDP, seeds."""
