"""vSphere access: the session (login, TLS, retries, call counting), task
waits and the typed operations. The only code that touches pyVmomi."""
