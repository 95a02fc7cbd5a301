"""Jinja2 report templates, installed as the package data `archsmith.templates`."""
