"""Developer tools: the local AWS emulator fixture and the demo. Not deployed."""
