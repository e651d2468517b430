from ticketlock_server.cli import main

main()
