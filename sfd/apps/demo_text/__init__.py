"""`sfd demo-text`: concept forgetting end to end on captioned digits or Fashion-MNIST."""
