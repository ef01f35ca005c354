"""evaluation section (stub)."""


def section(run):
    return None
