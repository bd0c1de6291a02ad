"""`sfd demo`: the digits demo end to end (`run`) and its report folder (`report`)."""
