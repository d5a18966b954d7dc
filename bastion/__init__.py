"""bastion: a just-in-time SSH and PostgreSQL access gateway for AI agents and humans."""

__version__ = "0.1.0"
