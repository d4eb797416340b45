"""inspector: real-time camera line inspection with an autoencoder trained on good parts."""

__version__ = "0.1.0"
