"""The mesh CA side of the control plane: the CA, join tokens, issued-certificate records, the
certificate and join services, caller authentication, the join rate limiter and the CA worker processes."""
