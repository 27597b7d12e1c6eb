// Command outside plays the hosts outside the cluster that the agent reaches, run in a
// network namespace of the test harness's, on addresses of the documentation ranges:
//
//   - an "SSH server" that accepts the reverse tunnel: it sends a line every second and
//     records, per connection, when the last byte came in and went out;
//   - a mining pool speaking a stratum-like line protocol, recorded the same way;
//   - a DNS server answering A and TXT for every name, recording each query;
//   - a UDP peer that answers every datagram, recorded per flow as the TCP ones are;
//   - every ICMP echo request that reaches it (the kernel answers it), per flow;
//   - on request, a connection from the "SSH server" into a pod (the reverse tunnel's
//     other shape: the outside dials in), carried and recorded as the others.
//
// What it saw is served as JSON over a unix socket (GET /report; POST /clear; POST
// /dial?to=HOST:PORT), which the harness reads from the host whatever network namespace
// this runs in.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

func now() float64 { return float64(time.Now().UnixMicro()) / 1e6 }

// Flow is one accepted connection as this host saw it.
type Flow struct {
	ID        int     `json:"id"`
	Service   string  `json:"service"`
	Remote    string  `json:"remote"`
	Local     string  `json:"local,omitempty"` // this host's end, of a connection it opened
	Opened    float64 `json:"opened"`
	LastIn    float64 `json:"lastIn"`  // when the last byte arrived from the remote
	LastOut   float64 `json:"lastOut"` // when the last write to it succeeded
	BytesIn   int64   `json:"bytesIn"`
	BytesOut  int64   `json:"bytesOut"`
	Closed    float64 `json:"closed,omitempty"`
	CloseWhy  string  `json:"closeWhy,omitempty"`
	closeOnce sync.Once
}

// Query is one DNS question this host answered.
type Query struct {
	Time     float64 `json:"time"`
	Remote   string  `json:"remote"`
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	Protocol string  `json:"protocol"`
}

type record struct {
	sync.Mutex
	flows   []*Flow
	queries []Query
	nextID  int
}

var seen record

func (r *record) open(service string, conn net.Conn) *Flow {
	r.Lock()
	defer r.Unlock()
	r.nextID++
	flow := &Flow{ID: r.nextID, Service: service, Remote: conn.RemoteAddr().String(), Opened: now()}
	r.flows = append(r.flows, flow)
	return flow
}

func (r *record) update(change func()) {
	r.Lock()
	defer r.Unlock()
	change()
}

func (f *Flow) close(why error) {
	f.closeOnce.Do(func() {
		seen.update(func() { f.Closed, f.CloseWhy = now(), fmt.Sprint(why) })
	})
}

// serveLines accepts connections and, on each, reads lines (calling reply for each) and
// writes tick(n) every second, recording bytes and times both ways.
func serveLines(service, address string, reply func(string) string, tick func(int) string) {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		log.Fatalf("%s: %v", service, err)
	}
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				log.Printf("%s: accept: %v", service, err)
				continue
			}
			go carry(service, conn, reply, tick)
		}
	}()
}

func carry(service string, conn net.Conn, reply func(string) string, tick func(int) string) {
	carryFlow(seen.open(service, conn), conn, reply, tick)
}

func carryFlow(flow *Flow, conn net.Conn, reply func(string) string, tick func(int) string) {
	defer conn.Close()
	var writing sync.Mutex
	write := func(text string) error {
		writing.Lock()
		defer writing.Unlock()
		conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
		n, err := conn.Write([]byte(text))
		seen.update(func() {
			flow.BytesOut += int64(n)
			if n > 0 {
				flow.LastOut = now()
			}
		})
		return err
	}
	go func() {
		for sequence := 0; ; sequence++ {
			time.Sleep(time.Second)
			if err := write(tick(sequence)); err != nil {
				flow.close(fmt.Errorf("write: %w", err))
				conn.Close()
				return
			}
		}
	}()
	lines := bufio.NewReader(conn)
	for {
		line, err := lines.ReadString('\n')
		if len(line) > 0 {
			seen.update(func() { flow.BytesIn += int64(len(line)); flow.LastIn = now() })
		}
		if err != nil {
			flow.close(fmt.Errorf("read: %w", err))
			return
		}
		if answer := reply(strings.TrimSpace(line)); answer != "" {
			if err := write(answer); err != nil {
				flow.close(fmt.Errorf("write: %w", err))
				return
			}
		}
	}
}

func tunnelTick(n int) string { return fmt.Sprintf("in %d\n", n) }

// flows of UDP and ICMP, which have no connection: one Flow per remote address, opened at
// its first packet and never closed (they stop).
var datagrams = map[string]*Flow{}

func sawDatagram(service, remote string) *Flow {
	seen.Lock()
	defer seen.Unlock()
	key := service + " " + remote
	flow, ok := datagrams[key]
	if !ok {
		seen.nextID++
		flow = &Flow{ID: seen.nextID, Service: service, Remote: remote, Opened: now()}
		seen.flows = append(seen.flows, flow)
		datagrams[key] = flow
	}
	return flow
}

// serveUDP answers every datagram with one of its own.
func serveUDP(address string) {
	conn, err := net.ListenPacket("udp", address)
	if err != nil {
		log.Fatalf("udp: %v", err)
	}
	go func() {
		buffer := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFrom(buffer)
			if err != nil {
				continue
			}
			flow := sawDatagram("udp", from.String())
			seen.update(func() { flow.BytesIn += int64(n); flow.LastIn = now() })
			if written, err := conn.WriteTo([]byte("ack\n"), from); err == nil {
				seen.update(func() { flow.BytesOut += int64(written); flow.LastOut = now() })
			}
		}
	}()
}

// recordPings records every echo request that reaches this namespace; its kernel answers.
func recordPings() {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		log.Fatalf("icmp: %v", err)
	}
	go func() {
		buffer := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFrom(buffer)
			if err != nil {
				continue
			}
			message, err := icmp.ParseMessage(1, buffer[:n])
			if err != nil || message.Type != ipv4.ICMPTypeEcho {
				continue
			}
			echo, ok := message.Body.(*icmp.Echo)
			if !ok {
				continue
			}
			flow := sawDatagram("ping", fmt.Sprintf("%s:%d", from.String(), echo.ID))
			seen.update(func() { flow.BytesIn += int64(n); flow.LastIn = now(); flow.LastOut = now() })
		}
	}()
}

// dial opens a connection from the tunnel host into a pod and carries it.
func dial(from, to string) error {
	dialer := net.Dialer{
		Timeout:   2 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)},
	}
	conn, err := dialer.Dial("tcp", to)
	if err != nil {
		return err
	}
	go carryOut("inbound", conn)
	return nil
}

// carryOut carries a connection this host opened: recorded under the pod's address.
func carryOut(service string, conn net.Conn) {
	seen.Lock()
	seen.nextID++
	flow := &Flow{
		ID: seen.nextID, Service: service, Remote: conn.RemoteAddr().String(),
		Local: conn.LocalAddr().String(), Opened: now(),
	}
	seen.flows = append(seen.flows, flow)
	seen.Unlock()
	carryFlow(flow, conn, func(string) string { return "" }, tunnelTick)
}

func poolReply(line string) string {
	var request struct {
		ID     any    `json:"id"`
		Method string `json:"method"`
	}
	if json.Unmarshal([]byte(line), &request) != nil {
		return ""
	}
	answer, _ := json.Marshal(map[string]any{"id": request.ID, "result": true, "error": nil})
	return string(answer) + "\n"
}

func poolTick(n int) string {
	notify, _ := json.Marshal(map[string]any{
		"id": nil, "method": "mining.notify", "params": []any{fmt.Sprintf("job%d", n), true},
	})
	return string(notify) + "\n"
}

func serveDNS(address string) {
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, request *dns.Msg) {
		answer := new(dns.Msg)
		answer.SetReply(request)
		answer.Authoritative = true
		for _, question := range request.Question {
			seen.update(func() {
				seen.queries = append(seen.queries, Query{
					Time: now(), Remote: w.RemoteAddr().String(), Name: question.Name,
					Type: dns.TypeToString[question.Qtype], Protocol: w.RemoteAddr().Network(),
				})
			})
			header := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: 0}
			switch question.Qtype {
			case dns.TypeA:
				header.Rrtype = dns.TypeA
				answer.Answer = append(answer.Answer, &dns.A{Hdr: header, A: net.ParseIP("203.0.113.99")})
			case dns.TypeTXT:
				header.Rrtype = dns.TypeTXT
				answer.Answer = append(answer.Answer, &dns.TXT{Hdr: header, Txt: []string{"cmd=" + question.Name}})
			}
		}
		w.WriteMsg(answer)
	})
	var started sync.WaitGroup
	for _, network := range []string{"udp", "tcp"} {
		started.Add(1)
		server := &dns.Server{
			Addr: address, Net: network, Handler: handler, NotifyStartedFunc: started.Done,
		}
		go func() {
			if err := server.ListenAndServe(); err != nil {
				log.Fatalf("dns %s: %v", server.Net, err)
			}
		}()
	}
	started.Wait()
}

func serveReport(path string) {
	os.Remove(path)
	listener, err := net.Listen("unix", path)
	if err != nil {
		log.Fatalf("report: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /report", func(w http.ResponseWriter, _ *http.Request) {
		seen.Lock()
		body, _ := json.Marshal(map[string]any{"now": now(), "flows": seen.flows, "queries": seen.queries})
		seen.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	mux.HandleFunc("POST /clear", func(w http.ResponseWriter, _ *http.Request) {
		seen.update(func() { seen.flows, seen.queries, datagrams = nil, nil, map[string]*Flow{} })
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /dial", func(w http.ResponseWriter, r *http.Request) {
		from := r.URL.Query().Get("from")
		if from == "" {
			from = strings.Split(*tunnelAddress, ":")[0]
		}
		if err := dial(from, r.URL.Query().Get("to")); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	go http.Serve(listener, mux)
}

var tunnelAddress = flag.String("tunnel", "198.51.100.4:22", "where the SSH server listens")

func main() {
	tunnel := tunnelAddress
	pool := flag.String("pool", "203.0.113.7:3333", "where the mining pool listens")
	dnsAddress := flag.String("dns", "203.0.113.53:53", "where the DNS server listens")
	udpAddress := flag.String("udp", "198.51.100.4:4500", "where the UDP peer listens")
	report := flag.String("report", "", "the unix socket the report is served on")
	flag.Parse()
	if *report == "" {
		log.Fatal("--report is required")
	}
	serveLines("tunnel", *tunnel, func(string) string { return "" }, tunnelTick)
	serveLines("pool", *pool, poolReply, poolTick)
	serveDNS(*dnsAddress)
	serveUDP(*udpAddress)
	recordPings()
	// Listening on all three before the report socket appears: the harness waits for it.
	serveReport(*report)
	log.Printf("outside hosts up: tunnel %s, pool %s, dns %s, report %s", *tunnel, *pool, *dnsAddress, *report)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	os.Remove(*report)
}
