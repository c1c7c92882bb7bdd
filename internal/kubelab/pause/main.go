// Command pause is the pod sandbox's program in the Kubernetes lab, where no
// registry serves registry.k8s.io/pause: it holds the pod's namespaces and
// waits for the signal that ends the pod.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
