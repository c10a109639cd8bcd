from command_line.app import main

main()
