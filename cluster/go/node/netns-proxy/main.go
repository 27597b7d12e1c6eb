// Command netns-proxy carries TCP from inside a network namespace to the host's loopback:
// it listens on LISTEN inside the namespace and, for each connection, dials CONNECT from
// the host's. The local cluster's real node lives in a namespace of its own, and its
// kubelet, kube-proxy and kube-router reach the API server (on the host's loopback only)
// through this, as the pods of a real cluster reach theirs through a network.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	netns := flag.String("netns", "", "path of the network namespace to listen in")
	var pairs forwards
	flag.Var(&pairs, "forward", "LISTEN=CONNECT, e.g. 127.0.0.1:26443=127.0.0.1:26443 (repeatable)")
	flag.Parse()
	if *netns == "" || len(pairs) == 0 {
		log.Fatal("usage: netns-proxy --netns PATH --forward LISTEN=CONNECT ...")
	}
	var listeners []net.Listener
	for _, pair := range pairs {
		listen, connect, ok := strings.Cut(pair, "=")
		if !ok {
			log.Fatalf("--forward %q: want LISTEN=CONNECT", pair)
		}
		listener, err := listenIn(*netns, listen)
		if err != nil {
			log.Fatalf("listen on %s in %s: %v", listen, *netns, err)
		}
		listeners = append(listeners, listener)
		go serve(listener, connect)
	}
	log.Printf("netns-proxy: %d forwards from %s", len(listeners), *netns)
	select {}
}

// listenIn opens the listening socket inside the namespace; the thread then goes back,
// so every dial happens in the host's namespace.
func listenIn(path, address string) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err
	}
	defer home.Close()
	target, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("setns: %w", err)
	}
	listener, listenErr := net.Listen("tcp", address)
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is stranded in the namespace: let it die with the lock held.
		runtime.Goexit()
	}
	return listener, listenErr
}

func serve(listener net.Listener, connect string) {
	for {
		inside, err := listener.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			continue
		}
		go func() {
			defer inside.Close()
			outside, err := net.Dial("tcp", connect)
			if err != nil {
				log.Printf("dial %s: %v", connect, err)
				return
			}
			defer outside.Close()
			var done sync.WaitGroup
			done.Add(2)
			go func() { io.Copy(outside, inside); outside.(*net.TCPConn).CloseWrite(); done.Done() }()
			go func() { io.Copy(inside, outside); inside.(*net.TCPConn).CloseWrite(); done.Done() }()
			done.Wait()
		}()
	}
}
