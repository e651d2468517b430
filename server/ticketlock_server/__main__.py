from ticketlock_server.launcher import main

main()
