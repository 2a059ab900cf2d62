"""greenmon's version, in a leaf module: the views hash reads it without importing the
package's lazy attributes (``greenmon.Monitor``) into the module graph."""

__version__ = "0.1.0"
