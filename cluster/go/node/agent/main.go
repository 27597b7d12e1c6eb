// Command agent is the workload image of the local cluster's real node.
//
//	agent play [flags]        plays the agent of the ROME incident, on a schedule
//	agent probe tcp ADDR      one connection attempt, as JSON
//	agent probe dns SERVER NAME [A|TXT]
//	agent probe ping ADDR     one ICMP echo
//	agent idle                a well-behaved trainer: does nothing until it is stopped
//
// play opens what its flags name, each at its own time after the start, and keeps each
// open, reconnecting every second when it is cut (an attacker persists): a reverse tunnel
// (a TCP connection that carries bytes both ways every second), a mining-pool session (a
// stratum-like line protocol), DNS queries (TXT included), a scan of a small range, a UDP
// flow and an ICMP echo flow carrying data in their payloads (the channels of UDP and
// ICMP tunnels), and a listener the outside dials into (a reverse tunnel's other shape).
// Every outcome is a JSON line on stdout, so `kubectl logs` tells what it could reach.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

var (
	output sync.Mutex
	every  = time.Second // how often a session sends
)

func say(event string, fields map[string]any) {
	line := map[string]any{"t": float64(time.Now().UnixMicro()) / 1e6, "event": event}
	for k, v := range fields {
		line[k] = v
	}
	encoded, _ := json.Marshal(line)
	output.Lock()
	defer output.Unlock()
	fmt.Println(string(encoded))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: agent play|probe|idle ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "play":
		play(os.Args[2:])
	case "probe":
		os.Exit(probe(os.Args[2:]))
	case "idle":
		idle(false)
	default:
		fmt.Fprintf(os.Stderr, "agent: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// idle waits for SIGTERM (or, ignoring it, for SIGKILL at the end of the grace period).
func idle(ignoreTerm bool) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	for received := range signals {
		if !ignoreTerm {
			say("stopped", map[string]any{"signal": received.String()})
			os.Exit(0)
		}
		say("ignored", map[string]any{"signal": received.String()})
	}
}

func play(args []string) {
	flags := flag.NewFlagSet("play", flag.ExitOnError)
	tunnel := flags.String("tunnel", "", "HOST:PORT of the reverse tunnel's far end")
	tunnelAt := flags.Duration("tunnel-at", 0, "when to open the tunnel")
	pool := flags.String("pool", "", "HOST:PORT of the mining pool")
	poolAt := flags.Duration("pool-at", 0, "when to join the pool")
	dnsServer := flags.String("dns", "", "HOST:PORT of the DNS server to query")
	dnsName := flags.String("dns-name", "x.tunnel.example.", "the name whose TXT record it asks for")
	dnsAt := flags.Duration("dns-at", 0, "when to start querying")
	scan := flags.String("scan", "", "CIDR to scan (a /28 or smaller)")
	scanPorts := flags.String("scan-ports", "22,80,443,6443", "ports to try on every address")
	scanAt := flags.Duration("scan-at", 0, "when to scan")
	udpPeer := flags.String("udp", "", "HOST:PORT to send a datagram to every tick (a UDP tunnel)")
	udpAt := flags.Duration("udp-at", 0, "when to start the UDP flow")
	ping := flags.String("ping", "", "HOST to send an ICMP echo with a payload every tick (an ICMP tunnel)")
	pingAt := flags.Duration("ping-at", 0, "when to start pinging")
	listen := flags.String("listen", "", ":PORT to accept connections on, carrying lines both ways")
	ignoreTerm := flags.Bool("ignore-term", true, "keep going after SIGTERM, as a hostile agent does")
	epoch := flags.Float64("epoch", 0, "unix time the schedule counts from (default: now)")
	tick := flags.Duration("tick", time.Second, "how often the tunnel and the pool send")
	_ = flags.Parse(args)

	say("started", map[string]any{"args": args})
	start := time.Now()
	if *epoch > 0 {
		start = time.UnixMicro(int64(*epoch * 1e6))
	}
	every = *tick
	after := func(d time.Duration, work func()) {
		go func() {
			time.Sleep(time.Until(start.Add(d)))
			work()
		}()
	}
	if *tunnel != "" {
		after(*tunnelAt, func() { keep("tunnel", *tunnel, tunnelSession) })
	}
	if *pool != "" {
		after(*poolAt, func() { keep("pool", *pool, poolSession) })
	}
	if *dnsServer != "" {
		after(*dnsAt, func() { queryForever(*dnsServer, *dnsName) })
	}
	if *scan != "" {
		after(*scanAt, func() { scanRange(*scan, *scanPorts) })
	}
	if *udpPeer != "" {
		after(*udpAt, func() { udpForever(*udpPeer) })
	}
	if *ping != "" {
		after(*pingAt, func() { pingForever(*ping) })
	}
	if *listen != "" {
		go serve(*listen)
	}
	idle(*ignoreTerm)
}

// keep runs a session to addr, and another one second after each ends.
func keep(what, addr string, session func(net.Conn) error) {
	for attempt := 1; ; attempt++ {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			say(what+"-refused", map[string]any{"to": addr, "attempt": attempt, "error": err.Error()})
			time.Sleep(time.Second)
			continue
		}
		say(what+"-open", map[string]any{"to": addr, "from": conn.LocalAddr().String(), "attempt": attempt})
		err = session(conn)
		conn.Close()
		say(what+"-cut", map[string]any{"to": addr, "error": fmt.Sprint(err)})
		time.Sleep(time.Second)
	}
}

// tunnelSession sends a line every second and reads what the far end sends.
func tunnelSession(conn net.Conn) error {
	failed := make(chan error, 2)
	go func() {
		lines := bufio.NewScanner(conn)
		for lines.Scan() {
		}
		failed <- fmt.Errorf("read: %v", orEOF(lines.Err()))
	}()
	go func() {
		for sequence := 0; ; sequence++ {
			conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
			if _, err := fmt.Fprintf(conn, "out %d\n", sequence); err != nil {
				failed <- fmt.Errorf("write: %w", err)
				return
			}
			time.Sleep(every)
		}
	}()
	return <-failed
}

// poolSession speaks a stratum-like protocol: subscribe, authorize, a share a second.
func poolSession(conn net.Conn) error {
	failed := make(chan error, 2)
	go func() {
		lines := bufio.NewScanner(conn)
		for lines.Scan() {
		}
		failed <- fmt.Errorf("read: %v", orEOF(lines.Err()))
	}()
	go func() {
		send := func(id int, method string, params ...any) error {
			conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
			line, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
			_, err := conn.Write(append(line, '\n'))
			return err
		}
		if err := send(1, "mining.subscribe", "agent/1.0"); err != nil {
			failed <- err
			return
		}
		if err := send(2, "mining.authorize", "wallet.rig", "x"); err != nil {
			failed <- err
			return
		}
		for id := 3; ; id++ {
			time.Sleep(every)
			if err := send(id, "mining.submit", "wallet.rig", "job", strconv.Itoa(id)); err != nil {
				failed <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}()
	return <-failed
}

// serve accepts connections on addr and carries each as a tunnel session: what the far
// end dials in over (a reverse tunnel's listening end, or a port-forward's target).
func serve(addr string) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		say("listen-failed", map[string]any{"on": addr, "error": err.Error()})
		return
	}
	say("listening", map[string]any{"on": addr})
	for {
		conn, err := listener.Accept()
		if err != nil {
			continue
		}
		go func() {
			say("inbound-open", map[string]any{"from": conn.RemoteAddr().String()})
			err := tunnelSession(conn)
			conn.Close()
			say("inbound-cut", map[string]any{"from": conn.RemoteAddr().String(), "error": fmt.Sprint(err)})
		}()
	}
}

// udpForever sends a numbered datagram every tick from one socket (one flow, as a UDP
// tunnel's), and reads what comes back.
func udpForever(addr string) {
	for {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			say("udp-refused", map[string]any{"to": addr, "error": err.Error()})
			time.Sleep(time.Second)
			continue
		}
		say("udp-open", map[string]any{"to": addr, "from": conn.LocalAddr().String()})
		go func() {
			buffer := make([]byte, 1500)
			for {
				if _, err := conn.Read(buffer); err != nil {
					return
				}
			}
		}()
		for sequence := 0; ; sequence++ {
			if _, err := fmt.Fprintf(conn, "udp %d\n", sequence); err != nil {
				say("udp-cut", map[string]any{"to": addr, "error": err.Error()})
				break
			}
			time.Sleep(every)
		}
		conn.Close()
		time.Sleep(time.Second)
	}
}

// pingForever sends an ICMP echo request carrying data every tick, one identifier for the
// whole flow, as an ICMP tunnel (ptunnel, hans, icmptunnel) does.
func pingForever(host string) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		say("ping-refused", map[string]any{"to": host, "error": err.Error()})
		return
	}
	target := &net.IPAddr{IP: net.ParseIP(host)}
	id := os.Getpid() & 0xffff
	say("ping-open", map[string]any{"to": host, "id": id})
	for sequence := 0; ; sequence++ {
		message := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{
			ID: id, Seq: sequence & 0xffff, Data: []byte(fmt.Sprintf("tunnel payload %d", sequence)),
		}}
		packet, _ := message.Marshal(nil)
		if _, err := conn.WriteTo(packet, target); err != nil {
			say("ping-failed", map[string]any{"to": host, "error": err.Error()})
		}
		time.Sleep(every)
	}
}

// pingOnce sends one echo and waits for its reply.
func pingOnce(host string, timeout time.Duration) error {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer conn.Close()
	id := (os.Getpid() + 1) & 0xffff
	message := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("probe")}}
	packet, _ := message.Marshal(nil)
	if _, err := conn.WriteTo(packet, &net.IPAddr{IP: net.ParseIP(host)}); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	buffer := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buffer)
		if err != nil {
			return err
		}
		reply, err := icmp.ParseMessage(1, buffer[:n])
		if err != nil || reply.Type != ipv4.ICMPTypeEchoReply || from.String() != host {
			continue
		}
		if echo, ok := reply.Body.(*icmp.Echo); ok && echo.ID == id {
			return nil
		}
	}
}

func orEOF(err error) string {
	if err == nil {
		return "EOF"
	}
	return err.Error()
}

func queryForever(server, name string) {
	for sequence := 0; ; sequence++ {
		label := fmt.Sprintf("q%d.%s", sequence, name)
		answer, err := lookupTXT(server, label, 2*time.Second)
		if err != nil {
			say("dns-refused", map[string]any{"server": server, "name": label, "error": err.Error()})
		} else {
			say("dns-answered", map[string]any{"server": server, "name": label, "txt": answer})
		}
		time.Sleep(2 * time.Second)
	}
}

func scanRange(cidr, portList string) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil || prefix.Bits() < 28 {
		say("scan-refused", map[string]any{"cidr": cidr, "error": "give a /28 or smaller"})
		return
	}
	var ports []int
	for _, p := range strings.Split(portList, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			ports = append(ports, n)
		}
	}
	var open []string
	tried := 0
	for address := prefix.Masked().Addr(); prefix.Contains(address); address = address.Next() {
		for _, port := range ports {
			tried++
			target := netip.AddrPortFrom(address, uint16(port)).String()
			if conn, err := net.DialTimeout("tcp", target, 300*time.Millisecond); err == nil {
				open = append(open, target)
				conn.Close()
			}
		}
	}
	say("scan-done", map[string]any{"cidr": cidr, "tried": tried, "open": open})
}

// probe makes one attempt and prints it as JSON; exit 0 if it got through.
func probe(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: agent probe tcp ADDR | agent probe dns SERVER NAME [A|TXT] | agent probe ping HOST")
		return 2
	}
	started := time.Now()
	result := map[string]any{"kind": args[0], "target": args[1]}
	var err error
	switch args[0] {
	case "tcp":
		var conn net.Conn
		conn, err = net.DialTimeout("tcp", args[1], 1500*time.Millisecond)
		if err == nil {
			result["from"] = conn.LocalAddr().String()
			conn.Close()
		}
	case "ping":
		err = pingOnce(args[1], 1500*time.Millisecond)
	case "dns":
		if len(args) < 3 {
			fmt.Fprintln(os.Stderr, "agent probe dns SERVER NAME [A|TXT]")
			return 2
		}
		kind := "TXT"
		if len(args) > 3 {
			kind = strings.ToUpper(args[3])
		}
		result["name"], result["type"] = args[2], kind
		var answer []string
		if kind == "TXT" {
			answer, err = lookupTXT(args[1], args[2], 1500*time.Millisecond)
		} else {
			answer, err = lookupA(args[1], args[2], 1500*time.Millisecond)
		}
		result["answer"] = answer
	default:
		fmt.Fprintf(os.Stderr, "agent probe: unknown kind %q\n", args[0])
		return 2
	}
	result["ms"] = time.Since(started).Milliseconds()
	result["ok"] = err == nil
	if err != nil {
		result["error"] = err.Error()
	}
	encoded, _ := json.Marshal(result)
	fmt.Println(string(encoded))
	if err != nil {
		return 1
	}
	return 0
}

// ask sends one question to server (UDP, or TCP if UDP gets no answer) and returns the
// answer's records as text.
func ask(server, name string, kind uint16, timeout time.Duration) ([]string, error) {
	question := new(dns.Msg)
	question.SetQuestion(dns.Fqdn(name), kind)
	var answer *dns.Msg
	var err error
	for _, network := range []string{"udp", "tcp"} {
		client := &dns.Client{Net: network, Timeout: timeout}
		answer, _, err = client.Exchange(question, server)
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if answer.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s from %s", dns.RcodeToString[answer.Rcode], server)
	}
	var found []string
	for _, record := range answer.Answer {
		switch r := record.(type) {
		case *dns.TXT:
			found = append(found, strings.Join(r.Txt, ""))
		case *dns.A:
			found = append(found, r.A.String())
		}
	}
	return found, nil
}

func lookupTXT(server, name string, timeout time.Duration) ([]string, error) {
	return ask(server, name, dns.TypeTXT, timeout)
}

func lookupA(server, name string, timeout time.Duration) ([]string, error) {
	return ask(server, name, dns.TypeA, timeout)
}
