"""The Textual terminal UI; talks to the daemon only through the API client."""
