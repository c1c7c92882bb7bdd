// Command peer is the workload of the Docker and Kubernetes tests, built
// static and run FROM scratch: "peer serve ADDR" accepts and holds connections, printing
// "accepted PEER LOCAL" for each; "peer connect ADDR N" opens N connections
// (retrying while the address is not yet reachable), printing "connected
// LOCAL REMOTE" for each, and holds them.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: peer serve ADDR | peer connect ADDR N")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		ln, err := net.Listen("tcp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			fmt.Printf("accepted %s %s\n", c.RemoteAddr(), c.LocalAddr())
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	case "connect":
		n, _ := strconv.Atoi(os.Args[3])
		var held []net.Conn
		for len(held) < n {
			c, err := net.DialTimeout("tcp", os.Args[2], 2*time.Second)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			fmt.Printf("connected %s %s\n", c.LocalAddr(), c.RemoteAddr())
			held = append(held, c)
		}
		for { // hold them; a bare select{} would be taken for a deadlock
			time.Sleep(time.Hour)
		}
	}
}
