"""What the command lines share: exit codes, logging and one-line errors (``console``), and the
way a flag names the option field it sets (``flags``).

``precompute`` and ``experiments`` both stand on this package; the on-disk format
(``melshards``) does not know it. It imports only ``melshards.errors`` (the root error class
that marks an error as the user's to fix) and the standard library.
"""
