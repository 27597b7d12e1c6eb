// Command etcd is etcd's server, built from the public go.etcd.io modules.
// Debian ships etcd 3.4, which current kube-apiservers refuse; this wrapper
// lets the local cluster pin a supported release through go.mod instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
