"""features section (stub)."""


def section(run):
    return None
