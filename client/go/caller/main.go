// Command caller is a tiny Go client of credit.v1.CreditService: it shows
// that code generated from proto/ (buf generate with proto/buf.gen.yaml)
// works against the real server. It creates a user, tops up (and retries the
// top-up with the same idempotency key), spends, reads the balance, spends
// more than the balance and reads the google.rpc.ErrorInfo of the refusal,
// printing one line per step. scripts/test-go.sh checks those lines.
//
//	caller -addr 127.0.0.1:50051              the whole walk
//	caller -addr 127.0.0.1:50051 -health-only one health check, exit 0 if SERVING
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	creditv1 "example.com/credit-ledger/gen/go/credit/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address (plaintext)")
	healthOnly := flag.Bool("health-only", false, "check health once and exit")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for SERVING")
	flag.Parse()

	conn, err := grpc.Dial(*addr, grpc.WithInsecure())
	if err != nil {
		fail("dial %s: %v", *addr, err)
	}
	defer conn.Close()

	if err := waitServing(conn, *wait); err != nil {
		fail("health: %v", err)
	}
	fmt.Println("health: SERVING")
	if *healthOnly {
		return
	}
	walk(creditv1.NewCreditServiceClient(conn))
}

// waitServing asks grpc.health.v1.Health/Check (service "") until it answers
// SERVING or the time is up.
func waitServing(conn *grpc.ClientConn, wait time.Duration) error {
	health := grpc_health_v1.NewHealthClient(conn)
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("status %v", resp.GetStatus())
			}
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func walk(client creditv1.CreditServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const userID = "go-caller"

	created, err := client.CreateUser(ctx, &creditv1.CreateUserRequest{
		UserId: userID,
		Email:  "go-caller@example.com",
		Name:   "Go Caller",
	})
	check("CreateUser", err)
	u := created.GetUser()
	fmt.Printf("create-user: user_id=%s email=%s name=%q\n", u.GetUserId(), u.GetEmail(), u.GetName())

	topUpReq := &creditv1.TopUpRequest{UserId: userID, Amount: 100, IdempotencyKey: "go-top-up-1"}
	topUp, err := client.TopUp(ctx, topUpReq)
	check("TopUp", err)
	t := topUp.GetTransaction()
	fmt.Printf("top-up: amount=%d balance=%d type=%s sequence=%d\n",
		t.GetAmount(), topUp.GetBalance(), t.GetType(), t.GetSequence())

	// The same key and parameters again: applied once, the original answer.
	retry, err := client.TopUp(ctx, topUpReq)
	check("TopUp (retry)", err)
	fmt.Printf("top-up retry: same_transaction=%t balance=%d\n",
		retry.GetTransaction().GetTransactionId() == t.GetTransactionId(), retry.GetBalance())

	spend, err := client.Spend(ctx, &creditv1.SpendRequest{
		UserId:         userID,
		Amount:         30,
		IdempotencyKey: "go-spend-1",
		Usage:          &creditv1.UsageDetails{GraphExecId: "go-exec-1", Reason: "go caller"},
	})
	check("Spend", err)
	s := spend.GetTransaction()
	fmt.Printf("spend: amount=%d balance=%d type=%s sequence=%d graph_exec_id=%s\n",
		s.GetAmount(), spend.GetBalance(), s.GetType(), s.GetSequence(), s.GetUsage().GetGraphExecId())

	balance, err := client.GetBalance(ctx, &creditv1.GetBalanceRequest{UserId: userID})
	check("GetBalance", err)
	fmt.Printf("get-balance: balance=%d last_sequence=%d\n", balance.GetBalance(), balance.GetLastSequence())

	_, err = client.Spend(ctx, &creditv1.SpendRequest{UserId: userID, Amount: 1000, IdempotencyKey: "go-spend-2"})
	if err == nil {
		fail("Spend of 1000 with a balance of 70 succeeded")
	}
	st := status.Convert(err)
	fmt.Printf("spend too much: code=%s\n", st.Code())
	if st.Code() != codes.FailedPrecondition {
		fail("want FailedPrecondition, got %v", err)
	}
	infos := 0
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			infos++
			fmt.Printf("error-info: reason=%s domain=%s availableBalance=%s requestedAmount=%s\n",
				d.GetReason(), d.GetDomain(), d.GetMetadata()["availableBalance"], d.GetMetadata()["requestedAmount"])
		case error:
			fail("undecodable status detail: %v", d)
		}
	}
	fmt.Printf("error-info count: %d\n", infos)
}

func check(what string, err error) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "caller: "+format+"\n", args...)
	os.Exit(1)
}
