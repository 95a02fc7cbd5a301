"""The plugin's role definitions (agents/*.md), shipped as package data so that the agent runner finds them."""
