"""What `fsan ground` is asked, the videos it reads, and how its answers are shown."""
