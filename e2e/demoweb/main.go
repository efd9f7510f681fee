// Command demoweb is the web server of `make demo` (scripts/demo.sh): it answers every request
// on the given address with one line, so the demo needs no web server package on the machine.
//
//	demoweb 198.18.2.1:8080
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: demoweb ADDR:PORT")
		os.Exit(2)
	}
	srv := &http.Server{
		Addr: os.Args[1],
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s, the protected host is serving you\n", r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	log.Fatal(srv.ListenAndServe())
}
