/* A module with thread-local storage, loaded many times under different names by the
 * tls-modules test of init.c. */
__thread long tls_values[64];

long *tls_slot(void) { return tls_values; }
