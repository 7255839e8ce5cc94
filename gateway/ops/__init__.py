"""Operating a running gateway: reload, the admin API, and operator decisions (drain,
target drain) that outlive a request and a reload."""
