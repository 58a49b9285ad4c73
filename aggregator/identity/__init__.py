"""Who a local account is: the identity map file, its loading into the database with
effective dates, and `IdentityMap`, which turns (facility, local account, time) into a VO
member, or the explicit `unmapped` member. It imports the store only."""
