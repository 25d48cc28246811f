"""HTTP only: routes, request and response schemas, middleware."""
