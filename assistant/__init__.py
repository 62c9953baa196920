"""ScanChat: a chat assistant for clinicians that answers about 3D scans by calling real tools."""

__version__ = "0.1.0"
