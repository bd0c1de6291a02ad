"""`sfd compare`: forgetting methods side by side on one teacher (`run`, `settings`, `report`)."""
