"""What the command's test files share."""

# the smallest training run that exercises every stage (the IWAE estimate included)
TINY = ["--epochs", "1", "--hidden", "32", "--latent", "2", "--batch-size", "128",
        "--iwae-k", "5", "--no-progress"]
