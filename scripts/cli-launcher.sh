#!/bin/sh
':' //; case "${NODE_OPTIONS-}" in *openssl-ca*) ;; *) if [ -n "${NODE_EXTRA_CA_CERTS-}" ] && [ -z "${TWINFS_NODE_EXTRA_CA_CERTS+x}" ]; then TWINFS_NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS; export TWINFS_NODE_EXTRA_CA_CERTS; unset NODE_EXTRA_CA_CERTS; fi ;; esac; exec node "$0" "$@"
