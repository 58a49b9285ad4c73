"""Who may do what: readers' WLCG/OIDC tokens and the authority they carry (`tokens`), the
dashboard's sign-in and its signed sessions (`login`), and per-agent credentials bound to a
facility, stored hashed (`agent_tokens`). It imports the core, the store, the identity map and
the query layer's `Principal`."""
