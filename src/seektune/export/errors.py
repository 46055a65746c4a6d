"""The error every deployment command raises for a user mistake."""


class ExportError(ValueError):
    """A deployment problem phrased for the user (names the folder or option)."""
