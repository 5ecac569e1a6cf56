"""Generated from credit/v1/credit.proto by client/python/generate.py; do not edit."""
