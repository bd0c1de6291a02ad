"""`sfd compare`: forgetting methods side by side on one teacher (run, methods, curve, report)."""
