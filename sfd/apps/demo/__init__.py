"""`sfd demo`: the digits demo end to end (`run`), its cache of teachers (`cache`) and its report."""
