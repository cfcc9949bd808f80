"""What happened to every visual token of a video, drawn (the supplement's Figs. S2 and S3):
`render` (the figure from a token set and its frames), `command` (`tokenreel visualize`, from an
indexed video to a PNG)."""
