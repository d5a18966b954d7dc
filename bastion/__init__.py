"""bastion: a just-in-time SSH and PostgreSQL access gateway for AI agents and humans."""

import warnings

__version__ = "0.1.0"

# asyncssh still names cryptography's DSA classes in its type aliases, and cryptography
# (since 48) warns on every such access: ten lines on stderr before any command ran.
# bastion never accepts a DSA key (keyfiles.ACCEPTED_KEY_TYPES), so the warning tells
# our users nothing. It is filtered at its source module only, before asyncssh loads.
warnings.filterwarnings("ignore", message=r"DSA is deprecated", module=r"asyncssh(\.|$)")
