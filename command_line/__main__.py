from command_line.entry import main

main()
