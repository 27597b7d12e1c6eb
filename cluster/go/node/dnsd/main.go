// Command dnsd is the local cluster's DNS service (kube-system/kube-dns on the real node):
// it answers the names it is given and forwards every other question to an upstream
// server, as a cluster resolver does. The forwarding is the point: a pod allowed to
// reach the cluster DNS can still reach any authoritative server through it.
package main

import (
	"flag"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

func main() {
	listen := flag.String("listen", ":53", "address to serve on, UDP and TCP")
	upstream := flag.String("upstream", "", "HOST:PORT to forward other questions to")
	records := flag.String("records", "", "NAME=IP,... answered here (A records)")
	flag.Parse()

	owned := map[string]net.IP{}
	for _, pair := range strings.Split(*records, ",") {
		if name, ip, ok := strings.Cut(pair, "="); ok {
			owned[dns.Fqdn(strings.ToLower(name))] = net.ParseIP(ip)
		}
	}
	client := &dns.Client{Timeout: 2 * time.Second}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, request *dns.Msg) {
		if len(request.Question) == 1 {
			question := request.Question[0]
			if ip, ok := owned[strings.ToLower(question.Name)]; ok {
				answer := new(dns.Msg)
				answer.SetReply(request)
				answer.Authoritative = true
				if question.Qtype == dns.TypeA {
					header := dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}
					answer.Answer = append(answer.Answer, &dns.A{Hdr: header, A: ip})
				}
				w.WriteMsg(answer)
				return
			}
		}
		if *upstream == "" {
			refuse(w, request, dns.RcodeNameError)
			return
		}
		answer, _, err := client.Exchange(request, *upstream)
		if err != nil {
			refuse(w, request, dns.RcodeServerFailure)
			return
		}
		w.WriteMsg(answer)
	})
	var started sync.WaitGroup
	for _, network := range []string{"udp", "tcp"} {
		started.Add(1)
		server := &dns.Server{Addr: *listen, Net: network, Handler: handler, NotifyStartedFunc: started.Done}
		go func() { log.Fatal(server.ListenAndServe()) }()
	}
	started.Wait()
	log.Printf("dnsd serving %s (upstream %q, %d names of its own)", *listen, *upstream, len(owned))
	select {}
}

func refuse(w dns.ResponseWriter, request *dns.Msg, code int) {
	answer := new(dns.Msg)
	answer.SetRcode(request, code)
	w.WriteMsg(answer)
}
