"""Dataset screening: before training, what will each candidate set move, and what might it damage among the keep sets."""
